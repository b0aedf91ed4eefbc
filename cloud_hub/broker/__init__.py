"""The broker's side of device trust: who may connect to Mosquitto and what each may do.

The hub writes Mosquitto's ``password_file`` and ``acl_file`` from its registry and makes
the broker reload them (SIGHUP, or a configured command). A device's entry appears when it
enrolls and disappears when it is revoked; on reload Mosquitto refuses new connections
with the old password and drops the connection the device still had. See README.md for
why files and SIGHUP rather than Mosquitto's dynamic-security plugin.

::

    from cloud_hub.broker import BrokerAuth, hub_mqtt_login, sync_broker

    auth = BrokerAuth.from_settings(settings)      # None when the broker is not managed
    with registry.db.transaction() as session:     # at enrollment, beside the credential
        auth.record_credential(session, device_id, secret)
    auth.sync(registry.db)                         # rewrite the files if changed, reload
    login = hub_mqtt_login(settings)               # what ingest connects with
"""

from __future__ import annotations

from .auth import BrokerAuth, SyncResult, revoke_on_broker, sync_broker
from .hub_login import DEFAULT_HUB_USER, MqttLogin, broker_managed, hub_mqtt_login
from .passwords import hash_password, password_matches
from .policy import BrokerDevice, device_topics, render_acl, render_password_file
from .reload import BrokerReloader

__all__ = [
    "DEFAULT_HUB_USER",
    "BrokerAuth",
    "BrokerDevice",
    "BrokerReloader",
    "MqttLogin",
    "SyncResult",
    "broker_managed",
    "device_topics",
    "hash_password",
    "hub_mqtt_login",
    "password_matches",
    "render_acl",
    "render_password_file",
    "revoke_on_broker",
    "sync_broker",
]

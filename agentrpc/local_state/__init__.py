"""An agent's local services and checks, synced to the catalog by anti-entropy.

- ``definitions`` (pure): service and check definitions as HTTP bodies and config files give
  them, validated with the reference's texts;
- ``from_config`` (pure): the config files' ``service``/``services``/``check``/``checks``
  definitions decoded with those, a refusal a ``ConfigError`` naming the file and the key;
- ``state`` (pure): :class:`~agentrpc.local_state.state.LocalState`, what the agent has and what
  of it is in sync with the catalog; the catalog writes that would sync it;
- ``probes`` (Trio): one bounded HTTP or TCP check attempt;
- ``agent_state`` (Trio): :class:`~agentrpc.local_state.agent_state.LocalAgent`, the state at
  work: anti-entropy (full sync plus sync on change), TTL expiry, HTTP/TCP check runners, the
  reaper, and the config files' definitions loaded at start and replaced on reload
  (:meth:`LocalAgent.load_config`).

The agent owns one :class:`LocalAgent` and runs :meth:`LocalAgent.run` in its nursery::

    local = LocalAgent(LocalState(config.node_name, datacenter=config.datacenter,
                                  address=advertise_ip, token=config.acl_token),
                       call=agent.call, logger=hub.logger("agent"),
                       members=lambda: len(agent.lan.members()),
                       consul_service_port=server_port if config.server else None)
    await nursery.start(local.run)
"""

# Nothing is imported here: importing the pure ``definitions`` or ``state`` must not load trio
# through the package. Import from the modules themselves.

"""The service layer: one function per use case. Each takes an authenticated :class:`~.session.Session`
(principal + declared purpose), decides through the policy engine, audits, and returns a typed result. The CLI,
the REST API, the web UI and the demo only parse input, call a service and render what it returns."""

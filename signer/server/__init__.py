"""The gRPC server: wiring, servicers, authentication, OIDC, status mapping, metrics, config."""

__all__: list[str] = []

"""Registry authentication and authorization: htpasswd (bcrypt) Basic auth, Docker token auth
(JWT resource server plus a built-in ``/auth/token`` issuer) and per-repository access rules.

``auth_app(registry_asgi_app, registry_settings)`` wraps the registry app (returns it unchanged
when no auth is configured; raises :class:`AuthConfigError` for an unusable configuration).

Settings (``[registry]``): ``htpasswd`` turns on Basic auth; ``token_key`` (with ``htpasswd``)
turns on token auth with the built-in issuer, ``token_rootcertbundle`` trusts an external one
(``token_realm``, ``token_service``, ``token_issuer`` name it); ``access`` holds the rules (see
:mod:`ipfsreg.auth.policy`; none = every user may do everything, as distribution's htpasswd
mode); ``anonymous_pull`` lets requests without credentials pull every repository (and read
``/ipfs/``). ``/v2/`` always asks anonymous requests to authenticate, so clients learn the scheme.

Security notes: only rights are enforced here. Blocks are also served to any libp2p peer over
bitswap, and ``/v2/ipfs/<cid>`` repositories read any stored content by CID, so content is
private only as long as its CIDs and digests are.
"""

from ipfsreg.auth.htpasswd import Htpasswd, HtpasswdUnavailable, parse_htpasswd
from ipfsreg.auth.middleware import TOKEN_PATH, AuthApp, auth_app, auth_enabled
from ipfsreg.auth.policy import Access, AuthConfigError, Policy, Principal, Resource, parse_rule, parse_scope
from ipfsreg.auth.token import InvalidToken, TokenIssuer, TokenVerifier

__all__ = [
    "TOKEN_PATH",
    "Access",
    "AuthApp",
    "AuthConfigError",
    "Htpasswd",
    "HtpasswdUnavailable",
    "InvalidToken",
    "Policy",
    "Principal",
    "Resource",
    "TokenIssuer",
    "TokenVerifier",
    "auth_app",
    "auth_enabled",
    "parse_htpasswd",
    "parse_rule",
    "parse_scope",
]

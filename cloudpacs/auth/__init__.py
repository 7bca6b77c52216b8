"""Who is calling, and what they may do: API tokens, OIDC bearer JWTs, roles per project,
client address policy. Used by the HTTP layer; the CLI manages tokens through it."""

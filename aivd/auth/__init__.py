"""Who may use aivd's services: API keys (keys), user accounts (users), server-side sessions (sessions), the audit
log (audit), the sign-in rate limit (limits), and all of them as FastAPI dependencies (web). docs/security.md."""

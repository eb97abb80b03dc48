"""Who may call aivd's services: API keys with roles (aivd.auth.keys)."""

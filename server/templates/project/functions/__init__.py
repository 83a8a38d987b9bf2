"""This app's functions. Each module is a Convex module: `functions/messages.py` holds `messages:*`, and
`functions/admin/users.py` would hold `admin/users:*`."""

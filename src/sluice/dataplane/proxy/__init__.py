"""User-space full proxy: tcp.py (connections; splice.py moves bytes), udp.py (sessions)."""

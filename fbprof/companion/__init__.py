"""The companion protocol (iPhone app and its Python reference). See docs/companion-protocol.md."""

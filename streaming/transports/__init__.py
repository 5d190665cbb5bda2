"""Transports: how client bytes reach sessions and session output reaches clients (WebSocket, WebRTC)."""

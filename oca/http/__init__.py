"""HTTP for the appliance: pure RFC 9110 decisions and the socket-facing shell."""

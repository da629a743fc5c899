"""Pure tests: no servers and no server processes; they run in seconds."""

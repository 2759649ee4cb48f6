"""Everything that talks to GitHub: the client, App authentication and the durable call queue."""

"""opp_ci's GitHub side: webhooks in, test runs queued, results back to GitHub."""

__version__ = "0.1.0"

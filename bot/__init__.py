"""The Slack front end of clusterbook (Bolt app)."""

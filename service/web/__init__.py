"""HTTP plumbing shared by the API and the console: auth, rate limits and security headers,
errors, logs, metrics."""

"""The LLM layer: the Claude client on the real anthropic SDK, and what makes it cheap: the
response cache, step memos, prices and the cost ledger, the daily budget, shared rate limits."""

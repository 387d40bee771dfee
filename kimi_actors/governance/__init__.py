"""The rate brain: pure state machines (bucket, backoff, breaker) and the governor around them."""

"""Entry points: the only part of payments_core a handler in functions/ imports (with
``observability``). Each turns an invocation (an MSK batch, an API Gateway request, a
schedule or a deploy) into calls of the use cases, and their outcome into the answer."""

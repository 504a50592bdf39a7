"""The domain: the payment, its statuses and the one state machine (``payment``), the wire
contract with the saga (``contracts``), the error kinds every path distinguishes, and the
return-URL rule. It imports nothing of ours but ``config``."""

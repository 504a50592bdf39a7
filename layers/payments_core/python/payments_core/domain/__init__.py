"""The domain: the payment, its statuses and the one state machine (``payment``), the wire
contract with the saga (``contracts``: codes and command models; ``command_parsing``: a record
read into a command; ``events``: what we publish; ``storable_text``: text PostgreSQL can hold),
the error kinds every path distinguishes, and the return-URL rule. It imports nothing of ours
but ``config``."""

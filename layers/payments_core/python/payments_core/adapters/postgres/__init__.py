"""PostgreSQL through pg8000: connections and locks (``db``), the payments and their intents
(``repository``), the outbox, command outcomes, the reconciler's check queue, the archive, and
the migrations that build the schema (SQL files in ``payments_core/migrations``)."""

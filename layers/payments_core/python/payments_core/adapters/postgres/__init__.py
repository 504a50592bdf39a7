"""PostgreSQL through pg8000: connections and transactions (``db``, logging in ``db_login``),
the payments and their intents (``repository``), the payout guard's Connect accounts
(``connected_accounts``), the outbox, command outcomes, the reconciler's check queue, the
archive, and the migrations that build the schema (SQL files in ``payments_core/migrations``)."""

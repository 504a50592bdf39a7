-- When the reconciler last looked at a payment, so each run starts with the payments looked at
-- least recently: one that keeps failing (its PaymentIntent gone, say) cannot starve the rest.
-- Kept apart from updated_at, which measures how long a payment has been in its status.
ALTER TABLE payments ADD COLUMN IF NOT EXISTS reconciled_at timestamptz;

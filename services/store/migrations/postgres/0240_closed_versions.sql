-- Versions by the instant they were closed, for as_of reads (issue 15).
--
-- The values at t are the versions with valid_from <= t that are still open or were closed
-- after t. Those still open are the current values; those closed after t are found here, in
-- one range scan whose length is what changed after t, not the size of the history. It
-- replaces a walk back over the submissions accepted after t and one probe per key they name.
-- Only closed versions are indexed: the current ones (valid_to NULL) cost nothing here, and a
-- supersession adds one entry to an update that already touches every other index.
CREATE INDEX value_versions_closed ON value_versions (valid_to) WHERE valid_to IS NOT NULL;

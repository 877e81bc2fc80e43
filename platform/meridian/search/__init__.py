"""Global search: one ranked, prefix-matching query over accounts, contacts, leads,
opportunities and cases, from an index kept in the transaction of every record write."""

-- Redeeming a short code looks a person up by address alone (the code is valid only with its
-- address, in whichever tenant invited it), so the address needs an index of its own.
CREATE INDEX users_by_email ON users (email_lower);

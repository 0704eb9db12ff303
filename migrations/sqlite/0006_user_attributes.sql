-- A person's options (SystemUser spec.attributes), name -> value, as a JSON object in a column
-- of its own, so that the product reads them without parsing the profile.
ALTER TABLE users ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}';

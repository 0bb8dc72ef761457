CREATE TABLE stack_probe (id bigint PRIMARY KEY, note text NOT NULL);
INSERT INTO stack_probe VALUES (1, 'migrated');

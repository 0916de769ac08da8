-- The telesales example's store: products, customers and their orders, and the callbacks
-- the agent books. Run by telesales.py on first use; safe to run again (nothing is
-- created or added twice).

CREATE TABLE IF NOT EXISTS products (
    sku         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    price_pence INTEGER NOT NULL CHECK (price_pence >= 0),
    stock       INTEGER NOT NULL CHECK (stock >= 0)
);

CREATE TABLE IF NOT EXISTS customers (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL,
    -- digits only, with the country code: 447700900123
    phone TEXT NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS orders (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    ordered_on  TEXT NOT NULL,            -- ISO 8601 date
    status      TEXT NOT NULL CHECK (status IN ('delivered', 'shipped', 'processing'))
);

CREATE TABLE IF NOT EXISTS order_lines (
    order_id    INTEGER NOT NULL REFERENCES orders (id),
    sku         TEXT NOT NULL REFERENCES products (sku),
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    price_pence INTEGER NOT NULL,
    PRIMARY KEY (order_id, sku)
);

CREATE TABLE IF NOT EXISTS callbacks (
    id         INTEGER PRIMARY KEY,
    phone      TEXT NOT NULL,             -- digits only
    name       TEXT,
    call_at    TEXT NOT NULL,             -- ISO 8601 date and time, with its offset
    topic      TEXT,
    session_id TEXT NOT NULL,             -- the voicebridge session that booked it
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

INSERT OR IGNORE INTO products (sku, name, description, price_pence, stock) VALUES
    ('HS-100', 'Contoso Studio Headset', 'Over-ear wired headset with a boom microphone', 4900, 42),
    ('HS-200', 'Contoso Wireless Headset', 'Bluetooth headset, 30 hours of battery, noise cancelling', 8900, 7),
    ('HS-300', 'Contoso Office Headset Duo', 'Two-ear USB headset for calls, certified for Teams', 6500, 0),
    ('MC-10', 'Contoso Desk Microphone', 'USB condenser microphone with a desk stand', 5900, 15),
    ('SP-20', 'Contoso Conference Speaker', 'Speakerphone for rooms of up to eight people', 12900, 3),
    ('CB-1', 'Contoso USB-C Cable', 'Braided USB-C cable, two metres', 900, 250),
    ('EP-5', 'Contoso Ear Cushions', 'Replacement memory-foam ear cushions, one pair', 1500, 60);

INSERT OR IGNORE INTO customers (id, name, phone) VALUES
    (1, 'Alex Morgan', '447700900123'),
    (2, 'Sam Patel', '447700900456');

INSERT OR IGNORE INTO orders (id, customer_id, ordered_on, status) VALUES
    (1001, 1, '2026-03-02', 'delivered'),
    (1002, 1, '2026-06-18', 'shipped'),
    (1003, 2, '2026-05-27', 'delivered');

INSERT OR IGNORE INTO order_lines (order_id, sku, quantity, price_pence) VALUES
    (1001, 'HS-100', 1, 4900),
    (1001, 'CB-1', 2, 900),
    (1002, 'EP-5', 1, 1500),
    (1003, 'SP-20', 1, 12900);

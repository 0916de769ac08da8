"""The telesales example's python tools: products, order history, callbacks.

Each tool is an async function voicebridge calls with the model's arguments (already
checked against the JSON Schema in tools.toml) and a context (``ctx.session_id``,
``ctx.log``). The store is SQLite, created beside this file from store.sql on first use;
every query runs in a worker thread, so a slow disk never stalls the event loop.

Phone numbers are compared as digits with the country code; a number written the UK way
(07700 900123) is read as +44.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from voicebridge.tools import ToolContext, ToolError

HERE = Path(__file__).resolve().parent
DATABASE = HERE / "telesales.sqlite3"
SCHEMA = HERE / "store.sql"
MAX_RESULTS = 5

_ready = threading.Lock()
_created: set[Path] = set()


def connect(path: Path = DATABASE) -> sqlite3.Connection:
    """A connection to the store, creating it from store.sql the first time."""
    with _ready:
        if path not in _created:
            with sqlite3.connect(path, timeout=5) as db:
                db.executescript(SCHEMA.read_text(encoding="utf-8"))
            _created.add(path)
    db = sqlite3.connect(path, timeout=5)
    db.row_factory = sqlite3.Row
    return db


def phone_digits(phone: str) -> str:
    """+44 7700 900123, 07700 900123 and 447700900123 are all 447700900123."""
    digits = re.sub(r"\D", "", phone)
    if digits.startswith("00"):
        digits = digits[2:]
    elif digits.startswith("0"):
        digits = "44" + digits[1:]
    return digits


def _pounds(pence: int) -> str:
    return f"£{pence / 100:.2f}"


def _find_product(name: str) -> dict[str, Any]:
    words = [w for w in re.split(r"\W+", name.lower()) if w]
    if not words:
        raise ToolError("say which product to look for")
    where = " AND ".join("(lower(name) LIKE ? OR lower(description) LIKE ?)" for _ in words)
    params = [p for w in words for p in (f"%{w}%", f"%{w}%")]
    with connect() as db:
        rows = db.execute(
            f"SELECT sku, name, description, price_pence, stock FROM products WHERE {where} "
            "ORDER BY stock > 0 DESC, price_pence LIMIT ?",
            [*params, MAX_RESULTS],
        ).fetchall()
    return {
        "products": [
            {
                "sku": r["sku"],
                "name": r["name"],
                "description": r["description"],
                "price": _pounds(r["price_pence"]),
                "in_stock": r["stock"],
            }
            for r in rows
        ]
    }


async def find_product(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Products whose name or description holds every word of ``name``, cheapest first,
    those in stock before the rest."""
    return await asyncio.to_thread(_find_product, args["name"])


def _order_history(phone: str) -> dict[str, Any]:
    with connect() as db:
        customer = db.execute(
            "SELECT id, name FROM customers WHERE phone = ?", [phone_digits(phone)]
        ).fetchone()
        if customer is None:
            return {"found": False}
        orders = db.execute(
            "SELECT id, ordered_on, status FROM orders WHERE customer_id = ? "
            "ORDER BY ordered_on DESC LIMIT ?",
            [customer["id"], MAX_RESULTS],
        ).fetchall()
        history = []
        for order in orders:
            lines = db.execute(
                "SELECT p.name, l.quantity, l.price_pence FROM order_lines l "
                "JOIN products p ON p.sku = l.sku WHERE l.order_id = ? ORDER BY p.name",
                [order["id"]],
            ).fetchall()
            history.append(
                {
                    "order": order["id"],
                    "ordered_on": order["ordered_on"],
                    "status": order["status"],
                    "items": [{"product": li["name"], "quantity": li["quantity"]} for li in lines],
                    "total": _pounds(sum(li["quantity"] * li["price_pence"] for li in lines)),
                }
            )
    return {"found": True, "customer": customer["name"], "orders": history}


async def order_history(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """The latest orders of the customer with this phone number ({"found": false} if none)."""
    return await asyncio.to_thread(_order_history, args["phone"])


def _schedule_callback(
    phone: str, name: str | None, call_at: datetime, topic: str | None, session_id: str
) -> int:
    with connect() as db:
        cursor = db.execute(
            "INSERT INTO callbacks (phone, name, call_at, topic, session_id) "
            "VALUES (?, ?, ?, ?, ?)",
            [phone, name, call_at.isoformat(timespec="minutes"), topic, session_id],
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid


async def schedule_callback(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Book a callback: writes a row to the callbacks table."""
    phone = phone_digits(args["phone"])
    if len(phone) < 7:
        raise ToolError("that phone number is too short; ask for the full number")
    try:
        call_at = datetime.fromisoformat(args["call_at"])
    except ValueError:
        raise ToolError("call_at must be a date and time such as 2026-07-14T15:00") from None
    if call_at.tzinfo is None:
        raise ToolError("call_at needs its time zone offset, such as 2026-07-14T15:00+01:00")
    callback_id = await asyncio.to_thread(
        _schedule_callback, phone, args.get("name"), call_at, args.get("topic"), ctx.session_id
    )
    ctx.log.info("telesales.callback_booked", callback_id=callback_id)
    return {
        "scheduled": True,
        "callback": callback_id,
        "call_at": call_at.isoformat(timespec="minutes"),
    }

"""BudgetLayer: spend caps in USD that concurrent requests cannot race past — reserve the worst case before
the plan runs, settle the real cost after it.

Reads ``ctx.plan`` (planning itself when no RouterLayer ran), ``ctx.key`` and ``ctx.mlx`` when present;
after the inner app answered, ``ctx.outcome``. Writes ``ctx.budget`` (``ok``, ``warn``, ``downgrade``,
``blocked``, ``unavailable``, ``fail_open``), and ``ctx.plan`` when a ``downgrade`` budget re-plans the
request through its route. Answers 402 ``budget_exceeded`` and 503 ``budget_state_unavailable`` itself.

**Which budgets apply**: a virtual key's own (``budget_usd`` over ``budget_period``, named ``key:<name>``)
and every configured budget whose scope the request matches (``mux.money.scopes``: a key, a team, an end
user, tags, or everything). Budgets on one scope and period share one spend counter.

**Admission**: the request's worst case (``mux.money.estimate``: the plan's targets at catalog prices, summed
for a cascade, the largest for anything else) is reserved in every applicable budget's current period at
once, atomically (``SpendStore.reserve``): all or none. A request that does not fit a ``block`` budget is
refused with 402, the budget in the body, ``Retry-After`` (seconds until the period resets; none for
``total``) and a message naming the largest ``max_tokens`` that would fit. One that does not fit a
``downgrade`` budget is re-planned through the budget's ``to`` route and reserved again, with that budget
reporting but no longer refusing; a ``warn`` budget never refuses.

**Settlement**, once the inner app has returned (after a stream's last byte): the reservation becomes the
request's real total cost over every attempt (``ctx.outcome.cost_usd``); a request answered without any usage
keeps its worst case as spend (the provider did not say what it cost); a failed request, or a client that
went away (499), with no priced attempt releases it. Settle is idempotent by the request id, and off the
request path: the store batches it with others and it lands within a few ms (``SpendStore.finish_soon``);
until then the reservation holds the worst case, so the cap stays safe. A reservation expires after the
longest the plan can take (``reservation_ttl``), so a crashed worker cannot hold a budget.

**Headers** on every budgeted answer, written at ``http.response.start``: ``x-mux-budget-name`` (the budget
with the least left), ``x-mux-budget-remaining-usd`` (its cap minus spend and reservations, counting this
request at its known cost, or its worst case while a stream runs), ``x-mux-budget-reset`` (ISO 8601, or
``never`` for ``total``), and ``x-mux-budget-warning`` naming each budget past its ``warn_at`` or, for a
``warn`` budget, its cap.

**State unreachable** (``StoreUnavailable``): 503 naming the cause, unless every applicable budget sets
``fail_open: true`` — then the request is served unbudgeted and a warning logged.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from time import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from msgspec import Struct

from mux.asgi import ASGIApp, Message, Receive, Scope, Send
from mux.context import Context, Note, Outcome, at_end
from mux.errors import BudgetExceeded, MuxError, render_error
from mux.ingress import deny, ingress_of, with_request
from mux.money.estimate import WorstCase, prompt_estimate, worst_case
from mux.money.scopes import Scope as Who
from mux.money.scopes import key_scope
from mux.money.units import to_nano, to_usd
from mux.stores import StoreUnavailable
from mux.stores.spend import Admission, BudgetWindow, SpendStore, WindowUsage

if TYPE_CHECKING:
    from mux.routing.live import LiveRouting
    from mux.routing.plan import Plan

SLACK_S = 2.0  # added to a plan's longest time: the store calls before and after its attempts
MEMO_SIZE = 4096  # identities whose applicable budgets are remembered (the memo starts over past it)
MAX_TTL_S = 43_200.0  # below the stores' retain_s (a day), so a late settle is still recorded

_encode = msgspec.json.Encoder().encode


# ---- pure decisions -------------------------------------------------------------------------------------


class Rule(Struct, frozen=True, gc=False):
    """One budget, compiled: a cap in nano-USD (rounded down) on a scope over a period, and its action."""

    name: str
    cap_nano: int
    period: str
    scope: Any  # mux.money.scopes.Scope, or None for a key's own budget
    action: str = "block"  # block | warn | downgrade
    warn_at: float | None = None
    to: str | None = None
    fail_open: bool = False


class Applied(Struct, gc=False):
    """A rule that applies to one request, and the window the store counts it in."""

    rule: Rule
    window: BudgetWindow


# the budgets that apply to a request, their windows, and whether any can warn (a ``warn_at``, or not enforced)
Budgets = tuple[list[Applied], list[BudgetWindow], bool]


def compile_budgets(budgets: Sequence[Any]) -> list[Rule]:
    """Answer the rules of ``budgets`` (``mux.config.BudgetConfig``)."""
    rules = []
    for b in budgets:
        s = b.scope
        who = Who(key=s.key, team=s.team, end_user=s.end_user, tags=s.tag)
        rules.append(Rule(b.name, to_nano(b.usd, up=False), b.period, who, b.action, b.warn_at, b.to, b.fail_open))
    return rules


def applicable(rules: Sequence[Rule], key: Any, end_user: str | None, tags: dict[str, str]) -> list[Applied]:
    """Answer the budgets that apply to a request by virtual key ``key`` (a ``KeyRecord`` or None), end user
    ``end_user`` and ``tags``: the key's own budget first, then the configured ones in order."""
    out: list[Applied] = []
    name = team = None
    if key is not None:
        name, team = key.name, key.team
        if key.budget_usd is not None:
            rule = Rule(f"key:{name}", to_nano(key.budget_usd, up=False), key.budget_period, None)
            out.append(Applied(rule, BudgetWindow(rule.name, key_scope(name), rule.cap_nano, rule.period)))
    for rule in rules:
        scope_key = rule.scope.of(name, team, end_user, tags)
        if scope_key is not None:
            out.append(
                Applied(rule, BudgetWindow(rule.name, scope_key, rule.cap_nano, rule.period, rule.action != "warn"))
            )
    return out


def reservation_ttl(plan: Plan, backoff_max_s: float) -> float:
    """Answer how long a reservation for ``plan`` must live: every attempt its whole timeout and a backoff
    (or the route's total time, when shorter), plus ``SLACK_S``."""
    targets = plan.targets
    if len(targets) == 1:
        t = targets[0]
        longest = (1 + t.retries) * ((t.timeout_s or t.provider.timeout_s) + backoff_max_s)
    else:
        longest = sum((1 + t.retries) * ((t.timeout_s or t.provider.timeout_s) + backoff_max_s) for t in targets)
    if plan.total_timeout_s is not None:
        longest = min(longest, plan.total_timeout_s)
    return min(longest + SLACK_S, MAX_TTL_S)


def settlement(outcome: Outcome, answered: bool, reserved_nano: int) -> int | None:
    """Answer the spend to settle a request to in nano-USD, or None to release its reservation.

    The real total cost when some attempt was priced; the reservation when the request was answered
    (``answered``: a 2xx response started) but no attempt reported usage; 0 when answered with usage at no
    known price; otherwise (a failure, or a client that went away, 499) release."""
    if outcome.cost_usd is not None:
        return to_nano(outcome.cost_usd)
    if outcome.status == 499 or not answered:
        return None
    return reserved_nano if not outcome.spent else 0


@lru_cache(maxsize=256)
def iso(ts: int | None) -> str | None:
    """Answer epoch seconds as ISO 8601 UTC (``2027-03-11T00:00:00Z``), None for None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def usd_text(nano: int) -> str:
    """Answer nano-USD as a plain decimal USD string (``0.000642``, ``12``)."""
    if nano <= 0:
        return "0"
    whole, frac = divmod(nano, 1_000_000_000)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:09d}".rstrip("0")


def left_nano(window: WindowUsage, back_nano: int = 0) -> int:
    """Answer what ``window`` has left (negative when past its cap), with ``back_nano`` of this request's
    reservation known to be unused."""
    return window.cap_nano - window.spent_nano - window.reserved_nano + back_nano


def tightest(windows: Sequence[WindowUsage]) -> WindowUsage:
    """Answer the window with the least left (enforced windows first among equals)."""
    if len(windows) == 1:
        return windows[0]
    return min(windows, key=lambda w: (left_nano(w), not w.enforce))


def warnings(applied: Sequence[Applied], windows: Sequence[WindowUsage], back_nano: int = 0) -> list[str]:
    """Answer ``<name> <percent>%`` for each budget at or past its ``warn_at``, and each budget that does not
    refuse (``warn``, or downgraded) past its cap, counting ``back_nano`` of this request's reservation as
    unused."""
    out = []
    for a, w in zip(applied, windows, strict=False):
        used = w.cap_nano - left_nano(w, back_nano)
        threshold = a.rule.warn_at
        if (threshold is not None and used >= threshold * w.cap_nano) or (not w.enforce and used > w.cap_nano):
            pct = math.floor(100 * used / w.cap_nano) if w.cap_nano else 100
            out.append(f"{a.rule.name} {pct}%")
    return out


def refusal_message(refused: WindowUsage, worst: WorstCase, room: int) -> str:
    """Answer the 402 message: the budget, what is spent and held, this request's worst case and the largest
    ``max_tokens`` that would fit ``room`` nano-USD."""
    period = "in total" if refused.period == "total" else f"this {refused.period}"
    held = f" and {usd_text(refused.reserved_nano)} USD held by requests in flight" if refused.reserved_nano else ""
    text = (
        f"Budget '{refused.name}' cannot cover this request: {usd_text(refused.spent_nano)} of "
        f"{usd_text(refused.cap_nano)} USD spent {period}{held}, and this request may cost up to "
        f"{usd_text(worst.nano)} USD."
    )
    fit = worst.largest_max_tokens(room)
    if fit is None:
        return text + " Even its prompt does not fit: shorten it, or wait for the budget to reset."
    if fit < 1:
        return text + " No max_tokens would fit: the largest max_tokens that would fit is 0."
    return text + f" The largest max_tokens that would fit is {fit}."


class BudgetRefused(BudgetExceeded):
    """402 with the refusing budget beside OpenAI's error object."""

    def __init__(self, message: str, budget: dict[str, Any], headers: list[tuple[str, str]]) -> None:
        super().__init__(message, headers=headers)
        self.budget = budget

    def body(self) -> bytes:
        error = msgspec.json.decode(render_error(self.message, self.type, self.param, self.code))
        return _encode({**error, "budget": self.budget})


class BudgetStateUnavailable(MuxError):
    """503: the budget state cannot be read, and the budgets fail closed."""

    status = 503
    type = "server_error"
    code = "budget_state_unavailable"


def refusal(refused: WindowUsage, worst: WorstCase, room: int, now: float) -> BudgetRefused:
    """Answer the 402 for a request refused by ``refused``."""
    budget = {
        "name": refused.name,
        "spend_usd": to_usd(refused.spent_nano),
        "cap_usd": to_usd(refused.cap_nano),
        "period": refused.period,
        "resets_at": iso(refused.resets_at),
    }
    headers = []
    if refused.resets_at is not None:
        headers.append(("retry-after", str(max(1, math.ceil(refused.resets_at - now)))))
    return BudgetRefused(refusal_message(refused, worst, room), budget, headers)


def budget_headers(window: WindowUsage, back_nano: int, warned: list[str]) -> list[tuple[bytes, bytes]]:
    """Answer the ``x-mux-budget-*`` headers for ``window`` with ``back_nano`` of this request's reservation
    known to be unused, and the ``warned`` budgets."""
    reset = iso(window.resets_at) or "never"
    headers = [
        (b"x-mux-budget-name", window.name.encode()),
        (b"x-mux-budget-remaining-usd", usd_text(left_nano(window, back_nano)).encode()),
        (b"x-mux-budget-reset", reset.encode()),
    ]
    if warned:
        headers.append((b"x-mux-budget-warning", ", ".join(warned).encode()))
    return headers


# ---- the layer ------------------------------------------------------------------------------------------


class BudgetLayer:
    reads = frozenset({"plan"})  # key and mlx are used when present
    reads_after = frozenset({"outcome"})
    writes = frozenset({"budget"})  # and "plan" when a downgrade budget re-plans (see the module docstring)

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: SpendStore,
        routing: LiveRouting,
        budgets: Sequence[Any] | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
        logger: Any = None,
        clock: Callable[[], float] = time,
    ) -> None:
        """``budgets`` (``BudgetConfig``s) default to the served config's, so a reload applies their edits;
        ``store`` is the spend store (``mux.stores.spend``); ``routing`` gives the catalog, the health
        settings and, for ``downgrade``, the router."""
        self.app = app
        self.store = store
        self.routing = routing
        self.max_body_bytes = max_body_bytes
        self.logger = logger or structlog.get_logger("mux.budget")
        self.clock = clock
        self._given = budgets
        self._source: Any = None
        self._rules: list[Rule] = []
        self._applied: dict[tuple, Budgets] = {}  # who -> applicable budgets, for the current rules
        self._rules_for(budgets if budgets is not None else routing.config.budgets)

    def _rules_for(self, budgets: Sequence[Any]) -> list[Rule]:
        if budgets is not self._source:
            self._rules, self._source = compile_budgets(budgets), budgets
            self._applied = {}
        return self._rules

    def _applicable(self, key: Any, end_user: str | None, tags: dict[str, str]) -> Budgets:
        """``applicable`` for the current rules, with their windows, remembered per identity (at most
        ``MEMO_SIZE`` of them); the answer is shared: never change it."""
        who = (
            (key.name, key.team, key.budget_usd, key.budget_period) if key is not None else None,
            end_user,
            tuple(tags.items()) if tags else (),
        )
        found = self._applied.get(who)
        if found is None:
            if len(self._applied) >= MEMO_SIZE:
                self._applied.clear()
            applied = applicable(self._rules, key, end_user, tags)
            may_warn = any(a.rule.warn_at is not None or not a.window.enforce for a in applied)
            found = self._applied[who] = (applied, [a.window for a in applied], may_warn)
        return found

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if scope["type"] != "http" or ingress_of(scope) is None:
            return self.app(scope, receive, send)
        rules = self._rules_for(self._given if self._given is not None else self.routing.config.budgets)
        key = scope["mux"].key  # ingress_of made the context
        if not rules and (key is None or key.budget_usd is None):  # nothing to count: no store round trip
            return self.app(scope, receive, send)
        return with_request(scope, receive, send, self.max_body_bytes, self._guard)

    def _guard(self, ctx: Context, request: Any, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        mlx = ctx.mlx
        end_user = mlx.end_user if mlx is not None else None
        applied, windows, may_warn = self._applicable(ctx.key, end_user, mlx.tags if mlx is not None else {})
        if not applied:
            return self.app(scope, receive, send)
        plan = ctx.plan
        nowait = getattr(self.store, "reserve_nowait", None)
        if ctx.finishers is not None and plan is not None and nowait is not None:
            # the common case, without a coroutine of this layer in the request's await chain: the worst case
            # admitted in memory (the leases, ``reserve_nowait``), the settle left for the request's end
            routing = self.routing
            request_id = ctx.request_id or "bud_" + uuid.uuid4().hex
            worst = worst_case(
                plan.targets, request, routing.catalog, cascade=plan.cascade is not None, prompt=prompt_estimate(ctx)
            )
            ttl = reservation_ttl(plan, routing.config.health.backoff_max_ms / 1000)
            try:
                admission = nowait(request_id, windows, worst.nano, ttl)
            except StoreUnavailable:
                admission = None
            if admission is not None:
                ctx.budget = "ok"
                budget_send, settle = self._serving(ctx, request_id, admission, worst, applied, may_warn, send)
                at_end(ctx, settle)
                return self.app(scope, receive, budget_send)
        return self._guard_waiting(ctx, request, scope, receive, send, applied, windows, may_warn)

    async def _guard_waiting(
        self,
        ctx: Context,
        request: Any,
        scope: Scope,
        receive: Receive,
        send: Send,
        applied: list[Applied],
        windows: list[BudgetWindow],
        may_warn: bool,
    ) -> None:
        end_user = ctx.mlx.end_user if ctx.mlx is not None else None
        mlx = ctx.mlx
        routing = self.routing
        plan = ctx.plan
        try:
            if plan is None:  # no RouterLayer outside: plan as Dispatch would
                plan = ctx.plan = routing.router.plan(
                    request, end_user=end_user, session=mlx.session_id if mlx else None
                )
            request_id = ctx.request_id or "bud_" + uuid.uuid4().hex
            try:
                # reserve the plan's worst case in every window (here, not in a coroutine of its own)
                backoff = routing.config.health.backoff_max_ms / 1000
                prompt = prompt_estimate(ctx)
                worst = worst_case(
                    plan.targets, request, routing.catalog, cascade=plan.cascade is not None, prompt=prompt
                )
                admission = await self.store.reserve(request_id, windows, worst.nano, reservation_ttl(plan, backoff))
                ctx.budget = "ok"
                if not admission.admitted and admission.refused is not None:
                    first = applied
                    admission, worst, applied = await self._downgrade(
                        ctx, request, plan, applied, request_id, admission, worst, prompt, backoff
                    )
                    may_warn = may_warn or applied is not first  # a downgrade relaxed its budget
            except StoreUnavailable as exc:
                if all(a.rule.fail_open for a in applied):
                    self.logger.warning(
                        "budget_state_unavailable", request_id=ctx.request_id, error=str(exc), action="fail_open"
                    )
                    ctx.budget = "fail_open"
                    return await self.app(scope, receive, send)
                ctx.budget = "unavailable"
                return await deny(
                    scope, send, BudgetStateUnavailable(f"Budgets cannot be checked, so this request is refused: {exc}")
                )
        except MuxError as error:  # a downgrade route that cannot serve this request, or planning failed
            return await deny(scope, send, error)
        if not admission.admitted:
            ctx.budget = "blocked"
            refused = admission.refused
            assert refused is not None
            denial = refusal(refused, worst, admission.headroom_nano or 0, self.clock())
            headers = budget_headers(refused, 0, [])
            denial.headers.extend((k.decode(), v.decode()) for k, v in headers)
            return await deny(scope, send, denial)
        budget_send, settle = self._serving(ctx, request_id, admission, worst, applied, may_warn, send)
        try:
            await self.app(scope, receive, budget_send)
        finally:
            settle()

    def _serving(
        self,
        ctx: Context,
        request_id: str,
        admission: Admission,
        worst: WorstCase,
        applied: list[Applied],
        may_warn: bool,
        send: Send,
    ) -> tuple[Send, Callable[[], None]]:
        """Answer the ``send`` that adds the budget headers to an admitted request's answer, and what settles
        or releases its reservation once it is done (never raises)."""
        shown = tightest(admission.windows)
        answered = False
        seen: tuple[float, int] | None = None  # the cost known when the answer started, in nano-USD

        def budget_send(message: Message) -> Any:
            nonlocal answered, seen
            if message["type"] == "http.response.start":
                answered = 200 <= message["status"] < 300
                cost = ctx.outcome.cost_usd
                back = 0
                if cost is not None:
                    seen = (cost, to_nano(cost))
                    back = max(0, worst.nano - seen[1])
                warned = warnings(applied, admission.windows, back) if may_warn else []
                if warned and ctx.budget == "ok":
                    ctx.budget = "warn"
                message = {**message, "headers": [*message.get("headers", ()), *budget_headers(shown, back, warned)]}
            return send(message)

        def settle() -> None:
            amount = None
            try:
                if seen is not None and ctx.outcome.cost_usd == seen[0]:
                    amount = seen[1]  # (the cost did not change since the answer started: a JSON answer)
                else:
                    amount = settlement(ctx.outcome, answered, worst.nano)
                self.store.finish_soon(request_id, amount)  # batched off the request path: lands within ms
            except Exception as exc:  # noqa: BLE001 - the answer is sent: report, never fail it afterwards
                self.logger.error(
                    "budget_settle_failed",
                    request_id=request_id,
                    amount_nano=amount,
                    error=f"{type(exc).__name__}: {exc}",
                )

        return budget_send, settle

    async def _downgrade(
        self,
        ctx: Context,
        request: Any,
        plan: Plan,
        applied: list[Applied],
        request_id: str,
        admission: Admission,
        worst: WorstCase,
        prompt: int,
        backoff: float,
    ) -> tuple[Admission, WorstCase, list[Applied]]:
        """After ``admission`` refused the plan's worst case: when the refusing budget downgrades, reserve the
        worst case of its route instead (once); answer the admission that stands, its worst case and budgets."""
        routing = self.routing
        index = next(i for i, w in enumerate(admission.windows) if w is admission.refused)
        rule = applied[index].rule
        if rule.action != "downgrade" or rule.to is None or plan.route == rule.to[1:]:
            return admission, worst, applied
        mlx = ctx.mlx
        rerouted = msgspec.structs.replace(request, model=rule.to)
        if hasattr(rerouted, "models"):
            rerouted = msgspec.structs.replace(rerouted, models=None, fallbacks=None)
        cheaper = routing.router.plan(
            rerouted, end_user=mlx.end_user if mlx else None, session=mlx.session_id if mlx else None
        )
        relaxed = [
            Applied(a.rule, msgspec.structs.replace(a.window, enforce=False))
            if a.rule.action == "downgrade" and a.rule.to == rule.to
            else a
            for a in applied
        ]
        cheap_worst = worst_case(
            cheaper.targets, request, routing.catalog, cascade=cheaper.cascade is not None, prompt=prompt
        )
        second = await self.store.reserve(
            request_id, [a.window for a in relaxed], cheap_worst.nano, reservation_ttl(cheaper, backoff)
        )
        if not second.admitted:
            return second, cheap_worst, relaxed
        ctx.plan = cheaper
        ctx.budget = "downgrade"
        ctx.trace.append(
            Note("policy", note=f"budget '{rule.name}' cannot cover this request: served through {rule.to}")
        )
        return second, cheap_worst, relaxed

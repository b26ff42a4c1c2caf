"""Pure routing decisions: which provider and model serve an identifier, and the plan of attempts.

No I/O: the RouterLayer calls ``Router.plan`` and Dispatch executes the plan.

**Model identifiers** resolve, in this order:
1. ``@name``: the routing config ``name`` (its strategy orders its targets; a target may be ``@other``);
2. ``provider/model`` where ``provider`` is a configured provider's name;
3. a name listed in some provider's ``models`` (first provider wins), e.g. ``meta-llama/Llama-3-8B``;
4. a bare name matching an adapter's prefixes (``gpt-`` -> openai, ``claude-`` -> anthropic, ...): the first
   configured provider of that type;
anything else is ``model_not_found``; a name whose provider type is known but not configured answers
``provider_not_configured`` with the environment variable or config that would enable it.

**Precedence** when a request carries several routing fields:
1. candidates: ``model`` (expanded if a route), then ``models`` in order, then ``fallbacks`` in order; a
   target already listed is not repeated;
2. filters: OpenRouter's ``provider.only`` / ``provider.ignore`` (provider names), ``provider.max_price``
   (USD per million tokens, ``prompt`` / ``completion``), the model catalog's abilities and limits; each skip
   is in the trace with its reason. None left: ``no_route_available`` (or a 400 when abilities were lacking);
3. breakers: targets whose breaker is open (or half-open with its probe in flight) are skipped, unless every
   candidate's is: then the one whose cooldown ends first is kept ("panic routing", a policy note in the
   trace) and is sent the request as its probe — health orders and skips, it never refuses;
4. order: ``provider.sort`` (or ``route: "sort"``, by price) sorts all candidates; otherwise
   ``provider.order`` and then ``routing.prefer`` move the named providers to the front, in their order;
   then targets cooled by a recent 429 move after the others (their order kept);
5. length: ``provider.allow_fallbacks: false`` or ``routing.allow_fallbacks: false`` keep the first
   candidate only; ``routing.max_provider_tries`` (and a route's ``max_attempts``) cap the attempts.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from msgspec import Struct

from mux.catalog.models import Catalog, ModelInfo
from mux.catalog.prices import Price
from mux.config import CascadeConfig, Config, ProviderConfig, RouteConfig
from mux.context import Note
from mux.errors import InvalidRequest, ModelNotFound, NoRouteAvailable, ProviderNotConfigured
from mux.providers import ADAPTERS
from mux.routing.health import Health
from mux.wire.openai import ChatRequest, EmbeddingsRequest, ImagePart, JsonSchemaFormat, TextPart, UserMessage

DEFAULT_RETRY_ON: frozenset[int | str] = frozenset({429, "5xx", "timeout", "connect"})


class Target(Struct, gc=False, frozen=True):
    """One attempt's destination: a configured provider, the model it is sent, and the route's limits."""

    provider: ProviderConfig
    model: str
    timeout_s: float | None = None  # this attempt's whole time, when a route sets it
    retries: int = 0  # extra attempts at this same target
    route: str | None = None  # the route it came from

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"


class Skip(Struct, gc=False):
    target: str
    reason: str


class Plan(Struct, gc=False):
    """The ordered attempts for one request; the first to succeed answers it."""

    targets: list[Target]
    requested: str
    route: str | None = None
    route_version: int | None = None
    route_hash: str | None = None
    strategy: str = "single"
    retry_on: frozenset[int | str] = DEFAULT_RETRY_ON
    total_timeout_s: float | None = None
    max_attempts: int | None = None
    cascade: CascadeConfig | None = None
    variant: str | None = None
    skipped: list[Skip] = []
    reason: str = ""
    notes: list[Note] = []  # the router's policy notes, for the decision trace's events
    panic: str | None = None  # the label kept although its breaker is open: every candidate's was


class Resolver:
    """Resolves provider model identifiers against one ``Config``; answers are memoised."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._cache: dict[str, Target] = {}
        self._by_name = {p.name: p for p in config.providers}

    def resolve(self, name: str) -> Target:
        """Answer the target serving ``name`` (not a route); raise ``ModelNotFound`` or
        ``ProviderNotConfigured``."""
        target = self._cache.get(name)
        if target is None:
            target = self._resolve(name)
            if len(self._cache) < 10_000:
                self._cache[name] = target
        return target

    def _resolve(self, name: str) -> Target:
        if name.startswith("@"):
            known = ", ".join("@" + r for r in self.config.routes) or "none"
            raise ModelNotFound(f"The routing config '{name}' is not defined (defined: {known}).", param="model")
        prefix, slash, rest = name.partition("/")
        if slash and rest and prefix in self._by_name:
            return Target(self._by_name[prefix], rest)
        for provider in self.config.providers:
            if provider.serves(name):
                return Target(provider, name)
        type_name = prefix if slash and prefix in ADAPTERS else _type_by_prefix(name)
        if type_name is not None:
            model = rest if slash and prefix == type_name else name
            for provider in self.config.providers:
                if provider.type == type_name:
                    return Target(provider, model)
            adapter = ADAPTERS[type_name]
            hint = " or ".join(adapter.env_keys) or f"a base_url for type {type_name}"
            raise ProviderNotConfigured(
                f"The model '{name}' needs a provider of type '{type_name}', and none is configured: set {hint} "
                f"in the gateway's environment, or add a provider with type: {type_name} to its config file.",
                param="model",
            )
        raise ModelNotFound(self._unknown(name), param="model")

    def _unknown(self, name: str) -> str:
        providers = ", ".join(p.name for p in self.config.providers) or "none"
        listed = [f"{p.name}/{m}" for p in self.config.providers for m in p.models][:20]
        known = f"; listed models: {', '.join(listed)}" if listed else ""
        routes = f"; routes: {', '.join('@' + r for r in self.config.routes)}" if self.config.routes else ""
        return (
            f"The model '{name}' does not exist or is not served here. Use 'provider/model' with a configured "
            f"provider ({providers}){known}{routes}."
        )


def _type_by_prefix(name: str) -> str | None:
    for type_name, adapter in ADAPTERS.items():
        if adapter.model_prefixes and name.startswith(adapter.model_prefixes):
            return type_name
    return None


class RouteVersion(Struct, frozen=True):
    """One routing config as it is served: its content hash and its version number."""

    name: str
    config: RouteConfig
    version: int
    hash: str


class Selection(Struct):
    """What a strategy may look at besides the targets: who asks, shared health, the catalog, randomness."""

    end_user: str | None
    session: str | None
    health: Health
    rng: random.Random
    catalog: Catalog


def stable_fraction(key: str) -> float:
    """Answer a number in [0, 1) fixed by ``key`` (for sticky assignment)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def weighted_order(items: list, weights: list[float], rng: random.Random) -> list:
    """Answer ``items`` sampled without replacement in proportion to their weights (zero weights last)."""
    pool = [(w, i) for i, w in enumerate(weights)]
    order: list[int] = []
    while pool:
        total = sum(w for w, _ in pool)
        if total <= 0:
            order.extend(i for _, i in pool)
            break
        point = rng.random() * total
        for position, (weight, index) in enumerate(pool):
            point -= weight
            if point < 0 or position == len(pool) - 1:
                order.append(index)
                pool.pop(position)
                break
    return [items[i] for i in order]


def blended_price(price: Price | None) -> float:
    """A single figure to compare prices by: input plus output per million tokens (unknown: infinite)."""
    return float("inf") if price is None else price.input + price.output


class Router:
    """Makes plans from the config, the served route versions and the shared health."""

    def __init__(
        self,
        config: Config,
        resolver: Resolver,
        routes: dict[str, RouteVersion],
        health: Health,
        *,
        catalog: Catalog | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.routes = routes
        self.health = health
        self.catalog = catalog or Catalog(config.catalog)
        self.rng = rng or random.Random()
        self._singles: dict[str, tuple[Target, ModelInfo | None]] = {}  # plain model name -> target, its info

    def plan(
        self, request: ChatRequest | EmbeddingsRequest, *, end_user: str | None = None, session: str | None = None
    ) -> Plan:
        """Answer the plan for ``request`` (see the module docstring for precedence)."""
        if isinstance(request, EmbeddingsRequest):
            return self._embeddings(request, end_user, session)
        model = request.model
        if model and not request.models and not request.fallbacks and model[0] != "@":
            plan = self._single(model, request)
            if plan is not None:
                return plan
            plan = Plan(targets=[self.resolver.resolve(model)], requested=model)  # one target: nothing to order
            self._filter(plan, request)
            self._breakers(plan)
        else:
            selection = Selection(end_user, session, self.health, self.rng, self.catalog)
            names = [n for n in [model, *(request.models or ()), *(request.fallbacks or ())] if n]
            plan = Plan(targets=[], requested=names[0])
            seen: set[str] = set()
            for index, name in enumerate(names):
                for target in self._expand(name, selection, plan, depth=0, top=index == 0):
                    if target.label not in seen:
                        seen.add(target.label)
                        plan.targets.append(target)
            self._filter(plan, request)
            self._breakers(plan)
            self._order(plan, request)
            self._limit(plan, request)
        if not plan.targets:
            reasons = "; ".join(f"{s.target}: {s.reason}" for s in plan.skipped) or "no candidates"
            raise NoRouteAvailable(f"No target can serve this request ({reasons}).")
        return plan

    def _embeddings(self, request: EmbeddingsRequest, end_user: str | None, session: str | None) -> Plan:
        """The plan of an embeddings request: its model, or the targets of a route (no chat capability filters;
        breakers are applied by the attempts)."""
        model = request.model
        plan = Plan(targets=[], requested=model)
        if model[0] != "@":
            plan.targets.append(self.resolver.resolve(model))
        else:
            selection = Selection(end_user, session, self.health, self.rng, self.catalog)
            plan.targets = self._expand(model, selection, plan, depth=0, top=True)
            plan.cascade = None  # an embedding has no answer to check
        return plan

    def _single(self, model: str, request: ChatRequest) -> Plan | None:
        """The plan of a request for one plain model that passes every filter and whose breaker is closed, or
        ``None`` (then the general path decides, and explains any skip or panic)."""
        known = self._singles.get(model)
        if known is None:
            target = self.resolver.resolve(model)
            known = (target, self.catalog.info(target.provider, target.model))
            if len(self._singles) < 10_000:
                self._singles[model] = known
        target, info = known
        if request.provider is not None or not self.health.closed(target.label):
            return None
        if info is not None and Needs.of(request).unmet(info) is not None:
            return None
        return Plan(targets=[target], requested=model)

    def _expand(self, name: str, selection: Selection, plan: Plan, depth: int, top: bool) -> list[Target]:
        if not name.startswith("@"):
            return [self.resolver.resolve(name)]
        served = self.routes.get(name[1:])
        if served is None:
            self.resolver.resolve(name)  # raises model_not_found naming the defined routes
            raise AssertionError(name)
        route = served.config
        if top and depth == 0:
            plan.route, plan.route_version, plan.route_hash = served.name, served.version, served.hash
            plan.strategy = route.strategy
            plan.retry_on = frozenset(route.retry_on)
            plan.total_timeout_s = route.total_timeout_ms / 1000 if route.total_timeout_ms else None
            plan.max_attempts = route.max_attempts
            plan.cascade = route.cascade or (CascadeConfig() if route.strategy == "cascade" else None)
        ordered = self._strategy(served, selection, plan, top and depth == 0)
        targets: list[Target] = []
        for entry in ordered:
            if entry.model.startswith("@"):
                targets.extend(self._expand(entry.model, selection, plan, depth + 1, top))
                continue
            base = self.resolver.resolve(entry.model)
            targets.append(
                Target(
                    base.provider,
                    base.model,
                    entry.timeout_ms / 1000 if entry.timeout_ms else None,
                    entry.retries,
                    served.name,
                )
            )
        return targets

    def _strategy(self, served: RouteVersion, selection: Selection, plan: Plan, top: bool) -> list:
        route = served.config
        entries = list(route.targets)
        strategy = route.strategy
        if strategy in ("single", "fallback", "cascade"):
            return entries
        if strategy in ("weighted", "ab_test"):
            rng = selection.rng
            sticky = _sticky_key(route.sticky, selection)
            if sticky is not None or strategy == "ab_test" and (selection.end_user or selection.session):
                rng = random.Random(
                    stable_fraction(f"{served.name}:{sticky or selection.end_user or selection.session}")
                )
            ordered = weighted_order(entries, [t.weight for t in entries], rng)
            if strategy == "ab_test":
                if top:
                    plan.variant = ordered[0].model
                return ordered[:1]
            return ordered
        if strategy == "latency":

            def recent(entry) -> float:
                if entry.model.startswith("@"):
                    return float("inf")
                latency = selection.health.latency(self.resolver.resolve(entry.model).label)
                return -1.0 if latency is None else latency  # untried targets first: they get measured

            return sorted(entries, key=recent)
        if strategy == "cost":

            def cost(entry) -> float:
                if entry.model.startswith("@"):
                    return float("inf")
                target = self.resolver.resolve(entry.model)
                return blended_price(selection.catalog.price(target.provider, target.model))

            return sorted(entries, key=cost)
        raise AssertionError(strategy)

    def _filter(self, plan: Plan, request: ChatRequest) -> None:
        prefs = request.provider
        needs = Needs.of(request)
        kept: list[Target] = []
        unable = 0
        for target in plan.targets:
            reason = None
            name = target.provider.name
            info = self.catalog.info(target.provider, target.model)
            if prefs is not None and prefs.only is not None and name not in prefs.only:
                reason = "not in provider.only"
            elif prefs is not None and prefs.ignore and name in prefs.ignore:
                reason = "in provider.ignore"
            elif prefs is not None and prefs.max_price:
                reason = _over_price(info, prefs.max_price)
            if reason is None and info is not None:
                reason = needs.unmet(info)
                unable += reason is not None
            if reason is None:
                kept.append(target)
            else:
                plan.skipped.append(Skip(target.label, reason))
        plan.targets = kept
        if not kept and unable:
            reasons = "; ".join(f"{s.target} {s.reason}" for s in plan.skipped)
            raise InvalidRequest(
                f"No target can serve this request: {reasons}.", param="model", code="no_capable_target"
            )

    def _breakers(self, plan: Plan) -> None:
        """Skip the targets whose breaker is open (or whose half-open probe is in flight) while another
        candidate is left; when none is, keep the one whose cooldown ends first (panic routing)."""
        health = self.health
        reasons = [health.blocked(t.label) for t in plan.targets]
        if not any(reasons):
            return
        if all(reasons):
            chosen = min(plan.targets, key=lambda t: health.reopens_at(t.label))  # ties: the first in order
            plan.panic = chosen.label
            how = (
                "as its half-open probe"
                if health.blocked(chosen.label) == "circuit open"
                else "alongside its half-open probe in flight"
            )
            plan.notes.append(
                Note(
                    "policy",
                    target=chosen.label,
                    note=f"every candidate's circuit is open: sending to {chosen.label}, whose "
                    f"cooldown ends first, {how}",
                )
            )
        else:
            chosen = None
        kept = []
        for target, reason in zip(plan.targets, reasons, strict=True):
            if reason is None or target is chosen:
                kept.append(target)
            else:
                plan.skipped.append(Skip(target.label, reason))
        plan.targets = kept

    def _order(self, plan: Plan, request: ChatRequest) -> None:
        prefs = request.provider
        sort = prefs.sort if prefs is not None else None
        if sort is None and request.route == "sort":
            sort = "price"
        if sort == "price":
            plan.targets.sort(key=lambda t: blended_price(self.catalog.price(t.provider, t.model)))
            plan.reason = "sorted by price"
        elif sort in ("latency", "throughput"):
            plan.targets.sort(key=lambda t: self.health.latency(t.label) or 0.0)
            plan.reason = f"sorted by recent {sort}"
        else:
            for preferred in (
                request.routing.prefer if request.routing else None,
                prefs.order if prefs is not None else None,
            ):
                if preferred:
                    rank = {name: i for i, name in enumerate(preferred)}
                    plan.targets.sort(key=lambda t: rank.get(t.provider.name, len(rank)))
            # (later ``sort`` calls are stable: provider.order wins over routing.prefer)
        if len(plan.targets) > 1:
            cooled = [t.label for t in plan.targets if self.health.cooled(t.label)]
            if cooled and len(cooled) < len(plan.targets):
                plan.targets.sort(key=lambda t: t.label in cooled)  # stable: each group keeps its order
                plan.notes.append(
                    Note("policy", note=f"rate limited (429), tried after the others: {', '.join(cooled)}")
                )

    def _limit(self, plan: Plan, request: ChatRequest) -> None:
        allow = True
        if request.provider is not None and request.provider.allow_fallbacks is False:
            allow = False
        if request.routing is not None and request.routing.allow_fallbacks is False:
            allow = False
        if not allow:
            plan.targets = plan.targets[:1]
        cap = request.routing.max_provider_tries if request.routing else None
        if cap is not None:
            plan.targets = plan.targets[:cap]
        if plan.max_attempts is not None:
            plan.targets = plan.targets[: plan.max_attempts]


def _sticky_key(sticky: str | None, selection: Selection) -> str | None:
    if sticky == "end_user":
        return selection.end_user
    if sticky == "session":
        return selection.session
    return None


def _over_price(info: ModelInfo | None, max_price: dict[str, float]) -> str | None:
    price = info.price if info is not None else None
    if price is None:
        return "price unknown (provider.max_price set)"
    for key, value in max_price.items():
        if key == "prompt" and price.input > value or key == "completion" and price.output > value:
            return f"{key} price above provider.max_price"
    return None


class Needs(Struct, gc=False):
    """What a request needs of a model, read once from the request view."""

    tools: bool
    vision: bool
    json_schema: bool
    reasoning: bool
    prompt_tokens: int  # an estimate from the text: four characters a token
    max_output: int | None

    @classmethod
    def of(cls, request: ChatRequest) -> Needs:
        chars = 0
        vision = False
        for message in request.messages:
            content = message.content
            if isinstance(content, str):
                chars += len(content)
            elif content:
                for part in content:
                    if isinstance(part, TextPart):
                        chars += len(part.text)
                    elif isinstance(part, ImagePart) and isinstance(message, UserMessage):
                        vision = True
        reasoning = (
            request.reasoning is not None
            and request.reasoning.effort != "none"
            and request.reasoning.enabled is not False
        ) or request.reasoning_effort not in (None, "none")
        return cls(
            tools=bool(request.tools),
            vision=vision,
            json_schema=isinstance(request.response_format, JsonSchemaFormat),
            reasoning=reasoning,
            prompt_tokens=chars // 4,
            max_output=request.max_completion_tokens or request.max_tokens,
        )

    def unmet(self, info: ModelInfo) -> str | None:
        """Answer why a model of this description cannot serve the request, or ``None``."""
        for need, able, what in (
            (self.tools, info.tools, "tools"),
            (self.vision, info.vision, "images"),
            (self.json_schema, info.json_schema, "json_schema"),
            (self.reasoning, info.reasoning, "reasoning"),
        ):
            if need and able is False:
                return f"does not support {what}"
        if info.context_window is not None and self.prompt_tokens > info.context_window:
            return f"prompt (about {self.prompt_tokens} tokens) exceeds its context window of {info.context_window}"
        if self.max_output is not None and info.max_output is not None and self.max_output > info.max_output:
            return f"max tokens {self.max_output} exceeds its maximum output of {info.max_output}"
        return None


def route_versions(
    config: Config, store: Callable[[str, RouteConfig], tuple[int, str]] | None = None
) -> dict[str, RouteVersion]:
    """Answer the served version of every route; ``store`` assigns version numbers (default: all 1)."""
    from mux.routing.versions import content_hash

    served = {}
    for name, route in config.routes.items():
        if store is not None:
            version, digest = store(name, route)
        else:
            version, digest = 1, content_hash(route)
        served[name] = RouteVersion(name, route, version, digest)
    return served


def plan_for(request: ChatRequest, resolver: Resolver) -> Plan:
    """Answer the plan with no route versions or health history (for tests and one-off use)."""
    return Router(resolver.config, resolver, route_versions(resolver.config), Health()).plan(request)

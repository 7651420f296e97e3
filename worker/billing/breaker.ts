/**
 * A circuit breaker in front of Stripe. Once Stripe has failed a run of calls in a row (timed out,
 * refused the connection, answered 5xx or 429), calls stop for a cool-off: what would have been
 * sent is retried later by the usage queue, at no cost to Stripe or to the batch's time. Then one
 * call goes through as a probe (half-open): its success closes the breaker and lets the calls that
 * waited for it go; its failure opens it for another cool-off. Nothing is lost or sent twice by
 * this: a skipped row stays pending, and a row sent again carries the same meter-event identifier.
 *
 * The calls that wait look at the breaker on timers of their own rather than await the probe: the
 * probe may be another request's (another delivery of the queue), whose promise fails a waiter
 * once that request has ended, and a probe whose request ended without a word holds the others
 * back for one cool-off at most.
 *
 * Each isolate keeps its own breaker: one that has seen Stripe fail stops at once, without a
 * shared store on the path of every call.
 */

/** Failed Stripe calls in a row that open the breaker. */
export const BREAKER_FAILURES = 5;

/** How long an open breaker keeps calls from Stripe before a probe may go. */
export const BREAKER_COOL_OFF_MS = 30_000;

/** How often a call waiting for the probe looks whether it has its word. */
const PROBE_POLL_MS = 10;

/** A call the breaker did not make: Stripe is taken as down until `retryAt` (epoch ms). */
export class StripeUnavailableError extends Error {
  constructor(readonly retryAt: number) {
    super("Stripe is failing: calls are paused for a while");
    this.name = "StripeUnavailableError";
  }
}

/** Closed, open until a time, or half-open with one probe under way. */
export class CircuitBreaker {
  private failures = 0;
  private openUntil: number | undefined;
  /** The half-open probe under way, and when it started (its clock's time). */
  private probe: { since: number } | undefined;

  constructor(
    private readonly threshold = BREAKER_FAILURES,
    private readonly coolOffMs = BREAKER_COOL_OFF_MS,
  ) {}

  /** When calls may go again (epoch ms), or undefined while the breaker is closed. */
  get reopensAt(): number | undefined {
    return this.openUntil;
  }

  /**
   * Makes `call` unless the breaker is open, and learns from its outcome: errors `failed` calls a
   * sign of Stripe failing count towards opening it, anything else (an answer, a 4xx) closes it.
   * Throws `StripeUnavailableError` for a call it did not make.
   */
  async call<T>(now: () => number, call: () => Promise<T>, failed: (error: unknown) => boolean): Promise<T> {
    let probing: { since: number } | undefined;
    while (this.openUntil !== undefined) {
      if (now() < this.openUntil) throw new StripeUnavailableError(this.openUntil);
      // Half-open with the probe under way: wait for its word rather than pile onto Stripe.
      if (this.probe && now() - this.probe.since < this.coolOffMs) {
        await new Promise((resolve) => setTimeout(resolve, PROBE_POLL_MS));
        continue;
      }
      probing = { since: now() };
      this.probe = probing;
      break;
    }
    try {
      const result = await call();
      this.succeeded();
      return result;
    } catch (error) {
      const down = failed(error);
      if (down) this.failedAt(now());
      else this.succeeded();
      throw error;
    } finally {
      if (probing && this.probe === probing) this.probe = undefined;
    }
  }

  private succeeded(): void {
    this.failures = 0;
    this.openUntil = undefined;
  }

  private failedAt(at: number): void {
    this.failures += 1;
    // A failed probe, or a failure while open, starts the cool-off over.
    if (this.openUntil !== undefined || this.failures >= this.threshold) this.openUntil = at + this.coolOffMs;
  }
}

/**
 * The floor for a Worker gateway that meters: the least any gateway must do to reserve against a
 * request and bill its usage. It parses the request body (the model, `max_tokens`, the prompt),
 * sends it on, and reads the answer for its usage — a plain answer whole, a stream chunk by chunk
 * through JavaScript — with no token check, quota or ledger. Whatever a metering gateway costs
 * beyond this is its own work; what this costs beyond the no-op Worker, any metering gateway pays.
 */
const decoder = new TextDecoder();

export default {
  /**
   * @param {Request} request
   * @param {{ UPSTREAM: string }} env
   */
  async fetch(request, env) {
    const url = new URL(request.url);
    const body = await request.json();
    const upstream = await fetch(env.UPSTREAM + url.pathname, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!body.stream || !upstream.body) {
      const text = await upstream.text();
      const usage = JSON.parse(text).usage;
      return new Response(text, {
        status: upstream.status,
        headers: { "content-type": "application/json", "x-usage": String(usage?.total_tokens) },
      });
    }
    const reader = upstream.body.getReader();
    let seen = 0;
    const stream = new ReadableStream(
      {
        async pull(controller) {
          const { done, value } = await reader.read();
          if (done) {
            controller.close();
            return;
          }
          if (decoder.decode(value, { stream: true }).includes('"usage"')) seen++;
          controller.enqueue(value);
        },
        cancel(reason) {
          return reader.cancel(reason);
        },
      },
      { highWaterMark: 0 },
    );
    void seen;
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  },
};

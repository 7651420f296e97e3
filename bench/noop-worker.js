/**
 * The floor for any Worker gateway: forwards every request to `UPSTREAM` unchanged and streams
 * the answer back. Whatever a Worker gateway costs beyond this is its own work.
 */
export default {
  /**
   * @param {Request} request
   * @param {{ UPSTREAM: string }} env
   */
  fetch(request, env) {
    const url = new URL(request.url);
    return fetch(env.UPSTREAM + url.pathname + url.search, request);
  },
};

import { newApp } from "./app";

const app = newApp();

export default {
  fetch: app.fetch,
} satisfies ExportedHandler<Env>;

import { newRouter } from "../http/router";

export const docsRoutes = newRouter();

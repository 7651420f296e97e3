import { newRouter } from "../http/router";

export const adminRoutes = newRouter();

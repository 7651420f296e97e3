import { newRouter } from "../http/router";

export const applicationRoutes = newRouter();

//! rtnetlink: bridges, addresses, routes, link and address events. Nothing
//! else in netd builds netlink messages.

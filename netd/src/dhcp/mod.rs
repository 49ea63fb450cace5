//! dnsmasq: config generation, supervision, SIGHUP, leases.

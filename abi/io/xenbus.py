"""xen/include/public/io/xenbus.h: the states both ends of a split device publish.

Each end writes its state into its own xenstore directory (``state``) and
watches the other's: the backend offers its features and waits
(InitWait), the frontend publishes its rings (Initialised), both go
Connected; a removal walks Closing -> Closed. dom0.xenbus.states holds the
backend's transition table.
"""

XenbusStateUnknown = 0
XenbusStateInitialising = 1
XenbusStateInitWait = 2  # backend: features published, waiting for the frontend's details
XenbusStateInitialised = 3  # frontend: rings and event channel published
XenbusStateConnected = 4
XenbusStateClosing = 5  # the device is going away (either end may start it)
XenbusStateClosed = 6
XenbusStateReconfiguring = 7
XenbusStateReconfigured = 8

# pvhyp's names for logs and `block-list` (C has only the enumerators).
XENBUS_STATE_NAMES = {
    XenbusStateUnknown: "Unknown",
    XenbusStateInitialising: "Initialising",
    XenbusStateInitWait: "InitWait",
    XenbusStateInitialised: "Initialised",
    XenbusStateConnected: "Connected",
    XenbusStateClosing: "Closing",
    XenbusStateClosed: "Closed",
    XenbusStateReconfiguring: "Reconfiguring",
    XenbusStateReconfigured: "Reconfigured",
}

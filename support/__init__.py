"""The support toolkit: the demo customer system (customers, subscriptions, tickets, the
credit ledger) and the tools the support agent uses on it.

It stands for a business's own systems, so it sits above the runtime: it registers its
tools into ``agents.tools.registry`` and its policy facts into ``agents.policy`` when the
app loads (``support.apps``), and no module of ``agents`` imports it."""

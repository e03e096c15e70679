"""Receivers of alarm protocols other than the centre's own MQTT one (docs/dc09.md).

Each receiver turns what a panel sends into the centre's own device events and commits them through
`alarmcentre.ingest.batch.process_batch`, the path of every MQTT message, before it answers the panel.
"""

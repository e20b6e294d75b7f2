"""The Label Studio ML backend: Segment Anything clicks and current-model pre-annotations."""

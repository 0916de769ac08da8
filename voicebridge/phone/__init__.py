"""Phone calls on the relay: Twilio Media Streams (``/ws/twilio``) and Azure Communication
Services bidirectional media streaming (``/ws/acs``)."""

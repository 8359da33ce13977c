"""The component package's plugin: Pulumi runs this to host the components (components/resources/hosted.py)."""

from components.resources.hosted import main

main()

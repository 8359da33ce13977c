"""The Pulumi program: `pulumi up -s <env>` runs this with stacks/Pulumi.<env>.yaml."""

from components.resources.stack import main

main()

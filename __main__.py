"""The Pulumi program: `pulumi up -s <env>` runs this with stacks/Pulumi.<env>.yaml."""

from components.stack import main

main()

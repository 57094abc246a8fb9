from securechat.ui.cli import main

main()
